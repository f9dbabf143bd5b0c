"""One thin CLI per DVC stage: parse params, call the library, write outputs."""
