"""Prove: was a suspect model trained on our watermarked text? (`radioactivity` is the test, `run`
reads the suspect, `report` writes the result.)"""

# Contexts scored by default: those in at least this many of the texts read. A model picks up the key's bias
# after a context from the watermarked continuations it saw; a context in fewer texts rarely leaves one.
MIN_CONTEXT_TEXTS = 10
