"""Looking inside a trained DynaMixer: its mixing matrices (``mixing_maps``) and their figures
(``plots``, which needs matplotlib)."""
