//! Shared helpers of the integration tests: independent reference computations.
