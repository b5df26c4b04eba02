"""Chat templates: the ChatTemplate protocol, named templates (data files here) and auto."""
