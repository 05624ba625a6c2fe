"""Offline training from a fixed dataset: sft, dpo (and its loss types), kto, rm, prm."""
