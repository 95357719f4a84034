"""Tests of one module or package each, in folders that mirror sipd/ and srfs/."""
