"""Moved to models/torch_reference.py; re-exported until the last test imports it from there."""
from models.torch_reference import *  # noqa: F403
