"""`serve`: a trained model (head, ensemble or fine-tuned network) as a web service and a page.

options.py holds the typed settings; limits.py refuses bad input before it is decoded; batcher.py
gathers concurrent requests into one network call on an inference thread; model.py loads the model
once and decodes uploads the way predict does; app.py is the FastAPI application; page.py the
upload page at `/`; run.py starts uvicorn (one or several workers); ray_app.py puts the same
application on Ray Serve. Only `serve` imports this package: the other commands never load
FastAPI, uvicorn or Ray Serve.
"""
