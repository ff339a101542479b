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
# The Lab widget (all four knobs, runs table, analytic charts) when this version of `widgets` has it;
# otherwise the tour's run panel.
if hasattr(widgets, "Lab"):
    dashboard = widgets.Lab()
else:
    from lab.experiment import ExperimentConfig

    dashboard = widgets.RunPanel(ExperimentConfig(technique="local_sgd", num_workers=8, sync_period=16, steps=160))
if metrics_path:
    Path(metrics_path).write_text(json.dumps({"dashboard": type(dashboard).__name__}))
dashboard
