"""Ray-free request execution: a typed call -> prepared once -> engine -> one merged item stream.

* :mod:`kronk.serving.call`: what crosses from a route to a model (endpoint, validated request, context);
* :mod:`kronk.serving.items`: what comes back (SSE text, one JSON dict, or a :class:`Failure`);
* :mod:`kronk.serving.service`: one model's engine behind the endpoint handlers;
* :mod:`kronk.serving.streams`: admission of a batch of calls and the one place their items are coalesced;
* :mod:`kronk.serving.backend`: what the HTTP routes talk to, and :mod:`kronk.serving.local` its in-process form
  (``deployments/ingress.py`` has the Serve-handle form).
"""
