"""`lorakit board`: a local web page over the stage functions the CLI calls (app.py), with training runs in
processes of their own (runs.py) and long calls in one worker thread (jobs.py)."""
