"""commlab widgets: ipywidgets knobs, altair charts and a run panel over `lab` (no training logic here).

    from widgets import RunPanel
    RunPanel()            # knobs, Run / Stop, progress, live loss charts

Charts are altair `JupyterChart`s in offline mode (JavaScript bundled by
vl-convert, nothing loaded from a CDN).
"""
from widgets.charts import (LiveChart, dashboard, enable_offline, frame, loss_chart, loss_vs_bytes, loss_vs_step,
                            loss_vs_time, run_label, show)
from widgets.knobs import (KnobPanel, compression_ratio_slider, compressor_picker, sharding_degree_picker,
                           sync_period_slider, technique_picker, topology_picker)
from widgets.compression import CompressionKnobs, compressor_frame, error_feedback_picker, loss_vs_bytes_chart, ratio_of
from widgets.run_panel import RunPanel
from widgets.topology_view import (TopologyView, consensus_chart, gantt_chart, predicted_vs_measured_chart,
                                   topology_chart)

__all__ = ["TopologyView", "consensus_chart", "gantt_chart", "predicted_vs_measured_chart", "topology_chart",
           "CompressionKnobs", "compressor_frame", "error_feedback_picker", "loss_vs_bytes_chart", "ratio_of",
           "KnobPanel", "LiveChart", "RunPanel", "compression_ratio_slider", "compressor_picker", "dashboard",
           "enable_offline", "frame", "loss_chart", "loss_vs_bytes", "loss_vs_step", "loss_vs_time", "run_label",
           "sharding_degree_picker", "show", "sync_period_slider", "technique_picker", "topology_picker"]

from widgets.sharding import ShardingExplorer, sharding_slider  # noqa: E402  (the sharding family)

__all__ += ["ShardingExplorer", "sharding_slider"]
