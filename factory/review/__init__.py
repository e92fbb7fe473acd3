"""Human review of a night: the static review sheet (sheet.py) and applying a reviewer's decisions (apply.py)."""
