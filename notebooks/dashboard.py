# ---
# jupyter:
#   kernelspec:
#     display_name: commlab (Python 3)
#     language: python
#     name: commlab
# ---

# %% [markdown]
# # commlab dashboard
#
# The lab as one page: the knobs, Run and Stop, and the live charts. `make dashboard` serves this notebook with
# Voila (code hidden, widgets live); in JupyterLab it runs like any other notebook.

# %% tags=["parameters"]
metrics_path = ""  # if set, which dashboard was shown is written here as JSON

# %%
from lab import notebook_params

notebook_params.bind(globals())  # papermill -p/-y values: known names only, list strings parsed

import json
from pathlib import Path

import widgets

_ = widgets.enable_offline()  # charts render without internet

# %%
dashboard = widgets.Lab()  # the four knobs, the technique and data, Run/Stop/sweep, analytic and run charts, runs table
if metrics_path:
    Path(metrics_path).write_text(json.dumps({"dashboard": type(dashboard).__name__}))
dashboard
