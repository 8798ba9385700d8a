-- wrk script: POST the echo request body.
wrk.method = "POST"
wrk.body = '{"input": "hello"}'
wrk.headers["Content-Type"] = "application/json"
