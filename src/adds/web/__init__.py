"""The ``adds serve`` web demo: upload an image, type labels, see scored tags as bars.

A FastAPI app (:func:`adds.web.app.create_app`) around one :class:`~adds.tagger.Tagger`, with a plain HTML page
(no CDN, no build step) in ``static/``. Needs the ``[demo]`` extra (fastapi, uvicorn, python-multipart).
"""
