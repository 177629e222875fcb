"""fedmol's Flower ServerApp: the coordinator (:mod:`fedmol.pilot.coordinator`) over the Grid.

The run config (``[tool.flwr.app.config]``, see :mod:`fedmol.pilot.config`) says which algorithm,
dataset / test set, rounds, deadlines and output folder; the results are the harness's files in
``out-dir`` on the coordinator machine. A failed run leaves ``out-dir/pilot_error.json``.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    from fedmol.pilot.config import PilotSettings
    from fedmol.pilot.coordinator import GridLink, run_coordinator

    s = PilotSettings.from_run_config(dict(context.run_config))
    torch.set_num_threads(s.threads if s.threads > 0 else torch.get_num_threads())
    inbox = f"{s.out_dir}/inbox.jsonl" if s.record_inbox else None
    run_coordinator(GridLink(grid, inbox_path=inbox), s, log=lambda m: print(m, flush=True))
