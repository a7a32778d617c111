"""`genllava serve`: an OpenAI-compatible HTTP API with image input and image output.

    api.py       the FastAPI app and its routes (create_app)
    schemas.py   request and response models in OpenAI's shapes
    convert.py   OpenAI messages -> genllava Messages and images
    media.py     data URLs -> images (sizes checked before decoding), images -> base64 PNG
    limits.py    every limit, with its flag and safe default
    batching.py  the bounded queue that batches concurrent requests into one generate call
    errors.py    OpenAI's error shape and the status codes
    server.py    uvicorn around the app, graceful shutdown
    web.py       the Gradio chat page (`genllava web`)
"""
