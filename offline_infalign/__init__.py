"""offline-infalign: inference-aware alignment (InfAlign-CTRL) done offline, DPO-style."""

__version__ = "0.1.0"
