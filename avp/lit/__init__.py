"""Lightning machinery: LightningModules, the DataModule and callbacks (the only Lightning-aware package)."""

from avp.signals import ignore_profiling_signal

# before any fit saves the signal handlers it restores at teardown (see avp.signals)
ignore_profiling_signal()
