"""`ehds-logreg`: federated logistic regression, a Flower app written only against Flower's
public API (flwr.app, flwr.serverapp, flwr.clientapp) with numpy and pyarrow."""
