"""The synthetic world: a town grid of roads (``road_map``), the ego route and agent tracks (``motion``) and the
six-camera renderer (``render``). Two users import it: ``odvla synth`` (``platform/data/synth.py``) writes datasets
from it, and the closed-loop simulator (``platform/sim/``) drives in it."""
