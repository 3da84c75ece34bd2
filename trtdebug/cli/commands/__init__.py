"""One module per command: parse options, call one workflow, hand its result to a renderer."""
