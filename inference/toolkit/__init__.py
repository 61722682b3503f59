"""The reparameterization toolkit: gradient-estimator reports and decisions under uncertainty."""
