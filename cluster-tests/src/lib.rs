//! Helpers shared by the process-level tests in tests/.
