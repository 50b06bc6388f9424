"""Labels beyond one class per head: composed classes (class tables), tag thresholds, suggested labels."""
