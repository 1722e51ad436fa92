"""WeCom platform plugin for imrobots (planned: registers the platform as planned only)."""
