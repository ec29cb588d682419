"""Federated experiments on Flower: data, models, apps, runner and reports.

Needs the ``fl`` extra (torch, flwr, flwr-datasets, matplotlib).
"""
