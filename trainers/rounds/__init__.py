"""Rounds of sample -> label -> build -> train: iterative DPO, RFT."""
