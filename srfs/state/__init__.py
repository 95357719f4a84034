"""The live state in memory: registrations and calls in progress.

Pure, with time passed in; one owner per piece of state, and changes heard
through subscriptions.
"""
