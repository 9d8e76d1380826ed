"""Small helpers shared by the data, training and evaluation code.

Nothing here touches global state on import: no environment variables, no
warning filters, no logging configuration (that happens in each script's main).
"""
