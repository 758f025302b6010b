"""Studies that run the simulation several times or map it: what-ifs, diagnosis, fit and sweep, repeated
layers, and the fx map of the model."""
