"""What the methods minimize besides their models: reconstruction losses (``losses``), the
mutual-information estimators of MI-MAE (``mi_estimators``) and MLO-MAE's hypergradients
(``hypergrad``)."""
