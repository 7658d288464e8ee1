"""FedAvg on NumPy arrays, for the ehds.fl tests."""
