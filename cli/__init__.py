"""The ``can-tf`` command line (installed as the ``can_tf_cli`` package).

The CLI stays thin: it parses options, resolves one :class:`can_tf.config.RunConfig`, and calls
the library. Subcommand modules are imported only when their command runs, so ``can-tf --help``
does not pay for importing TensorFlow.
"""
