"""The authentication pipeline: primary -> identity -> policy -> second factor -> reply."""
