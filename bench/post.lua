-- wrk script: POST the JSON file named by BENCH_BODY, or, with BENCH_CORPUS, each line
-- of that file in turn (one JSON body per line). Paths are from the repository root.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local corpus = os.getenv("BENCH_CORPUS")
if corpus and #corpus > 0 then
  local bodies = {}
  for line in io.lines(corpus) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  local i = 0
  request = function()
    i = i % #bodies + 1
    return wrk.format(nil, nil, nil, bodies[i])
  end
else
  local f = assert(io.open(os.getenv("BENCH_BODY"), "r"))
  wrk.body = f:read("*a")
  f:close()
end
