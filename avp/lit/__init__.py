"""Lightning machinery: LightningModules, the DataModule and callbacks (the only Lightning-aware package)."""
