"""Pharma collaboration pilots on Flower: the harness's algorithms between real machines.

* :mod:`fedmol.pilot.records` -- the wire format (fedmol Message <-> Flower RecordDict), versions;
* :mod:`fedmol.pilot.site` -- a partner site: its data, its answers, its audit log;
* :mod:`fedmol.pilot.client_app` / :mod:`fedmol.pilot.server_app` -- the Flower ClientApp / ServerApp;
* :mod:`fedmol.pilot.coordinator` -- the harness's round loop with deadlines over a Flower Grid;
* :mod:`fedmol.pilot.config` -- run config, the Flower app folder, TOML files;
* :mod:`fedmol.pilot.certs` -- CA, SuperLink certificate, SuperNode keys;
* :mod:`fedmol.pilot.plan` -- the coordinator's pilot TOML (schema, one-line errors);
* :mod:`fedmol.pilot.deploy` -- the two sides of a real pilot (``fedmol pilot coordinator`` /
  ``fedmol pilot partner``);
* :mod:`fedmol.pilot.processes` / :mod:`fedmol.pilot.loopback` / :mod:`fedmol.pilot.demo` -- real
  processes, on one machine (``fedmol pilot demo``) or the coordinator's.

Submodules import Flower lazily where they can; ``import fedmol.pilot`` imports nothing heavy.
"""
