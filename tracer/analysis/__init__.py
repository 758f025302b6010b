"""Pure analysis of a trace: lifetimes, peaks, the layers at the peak, the timeline, extrapolation, and the
Result composed from them."""
