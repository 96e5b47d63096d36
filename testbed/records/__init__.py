"""What a run records, whichever plane produced it: the request record schema (:mod:`.schema`),
the gateway's attempts and health changes (:mod:`.attempts`), and :class:`~.result.Result`."""
