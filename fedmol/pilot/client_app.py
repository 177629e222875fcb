"""fedmol's Flower ClientApp: what runs at a partner site for each message from the coordinator.

Message types (Flower ``<category>.<action>``):

* ``query.hello`` -- the site introduces itself (training / validation set sizes, width cap,
  task type, versions) and checks that its data loads;
* ``train`` -- :meth:`Algorithm.client_update` on the site's data (the harness's algorithm
  classes, unchanged);
* ``query`` -- :meth:`Algorithm.client_query` (e.g. HeteroFL's static-BN statistics);
* ``evaluate`` -- score the served model on the site's own validation molecules (with private
  heads: the served trunk plus the site's own head, :mod:`fedmol.pilot.heads`).

Each handler (:func:`make_client_app`, the one ClientApp of pilots and flower-sim) converts the Flower message with :mod:`fedmol.pilot.records`, answers with
:func:`fedmol.pilot.site.serve` (version check, audit log, redacted errors) and converts back. A
failure raises, so Flower returns an *error reply* that the coordinator records as this node's
failure for the round.
"""

from __future__ import annotations

from typing import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

def make_client_app(site_config: Callable[[Context], dict]) -> ClientApp:
    """A ClientApp whose node serves the site ``site_config(context)`` describes (its node config: a
    pilot's SuperNode, or one partner of a flower-sim run); ``threads`` in it sets torch's threads."""
    app = ClientApp()

    def serve(kind: str, message: Message, context: Context) -> Message:
        import torch

        from fedmol.pilot.records import from_record_dict, to_record_dict
        from fedmol.pilot.site import serve as site_serve

        site = site_config(context)
        threads = int(site.get("threads", 0) or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        msg, meta = from_record_dict(message.content)
        reply, info = site_serve(kind, msg, meta, site, run_id=message.metadata.run_id)
        return Message(to_record_dict(reply, info), reply_to=message)

    @app.query("hello")
    def hello(message: Message, context: Context) -> Message:
        return serve("hello", message, context)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return serve("train", message, context)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return serve("query", message, context)

    @app.evaluate()
    def validate(message: Message, context: Context) -> Message:
        return serve("validate", message, context)

    return app


#: a pilot site's ClientApp: its SuperNode's node config describes the site
app = make_client_app(lambda context: dict(context.node_config))
