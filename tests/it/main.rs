//! The single integration-test binary (ripgrep's layout): one module per topic.
