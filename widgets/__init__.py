"""commlab widgets: ipywidgets knobs, altair charts and a run panel over `lab` (no training logic here).

    from widgets import RunPanel
    RunPanel()            # knobs, Run / Stop, progress, live loss charts

Knobs derive from lab's declarations (`lab.config`, `lab.registry`): a panel
shows exactly the knobs the chosen technique reads. Charts are altair
`JupyterChart`s in offline mode (JavaScript bundled by vl-convert, nothing
loaded from a CDN).
"""
from widgets.charts import (
    LiveChart,
    dashboard,
    enable_offline,
    frame,
    loss_chart,
    loss_vs_bytes,
    loss_vs_step,
    loss_vs_time,
    run_label,
    show,
)
from widgets.compression import CompressionKnobs, compressor_frame, error_feedback_picker, loss_vs_bytes_chart, ratio_of
from widgets.knobs import (
    KnobPanel,
    compression_ratio_slider,
    compressor_picker,
    sharding_degree_picker,
    sync_period_slider,
    technique_picker,
    topology_picker,
)
from widgets.lab import Lab
from widgets.lab_runs import RunsTable
from widgets.moe import ExpertPlacement
from widgets.run_panel import RunPanel
from widgets.sequence import SequenceExplorer
from widgets.sharding import ShardingExplorer, sharding_slider
from widgets.technique_knobs import TechniqueKnobs
from widgets.topology_view import (
    TopologyView,
    consensus_chart,
    gantt_chart,
    predicted_vs_measured_chart,
    topology_chart,
)

__all__ = [
    "CompressionKnobs", "ExpertPlacement", "KnobPanel", "Lab", "LiveChart", "RunPanel", "RunsTable",
    "SequenceExplorer", "ShardingExplorer", "TechniqueKnobs", "TopologyView",
    "compression_ratio_slider", "compressor_frame", "compressor_picker", "consensus_chart", "dashboard",
    "enable_offline", "error_feedback_picker", "frame", "gantt_chart", "loss_chart", "loss_vs_bytes",
    "loss_vs_bytes_chart", "loss_vs_step", "loss_vs_time", "predicted_vs_measured_chart", "ratio_of", "run_label",
    "sharding_degree_picker", "sharding_slider", "show", "sync_period_slider", "technique_picker",
    "topology_chart", "topology_picker",
]
