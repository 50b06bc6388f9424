"""The two trainers (fit, distributed custom step), what they share (setup)
and the fit path's resumable backup."""
