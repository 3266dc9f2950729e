"""Stand-in nvidia-modelopt (see standin_log for the modes)."""
