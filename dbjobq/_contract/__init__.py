"""The conformance suite's tests, one module per topic; `dbjobq.testing` combines them."""
