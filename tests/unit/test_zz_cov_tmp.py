import collections, time
import httpx, schemathesis
from tests.helpers import GEMMA, SMOL
from tests.unit.test_fuzz import bounded, MODEL_POSTS

def test_cov(api_url):
    raw = httpx.get(api_url + "/openapi.json", timeout=30).json()
    for path in MODEL_POSTS:
        body = raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"type": "string", "enum": [GEMMA, SMOL]}
    s = schemathesis.openapi.from_dict(raw)
    stats = collections.Counter()
    for path in MODEL_POSTS:
        op = s[path]["POST"]
        gc = s.config.generation_for(operation=op)
        t0 = time.time()
        for case in s.iter_coverage_cases(op, generation_modes=list(schemathesis.GenerationMode), generation_config=gc):
            bounded(case)
            t = time.time()
            r = case.call(base_url=api_url, timeout=120)
            stats[(path, case.meta.generation.mode.value, r.status_code)] += 1
            if r.status_code >= 500 or time.time() - t > 3:
                print(round(time.time() - t, 1), r.status_code, r.text[:200], case.meta.phase.data.description, str(case.body)[:300])
        print(path, f"{time.time()-t0:.1f}s")
    for k, v in sorted(stats.items(), key=str):
        print(k, v)
