# Identify a photo with a running ecomarine service, from R (httr2).
# Usage: ECOMARINE_URL=http://127.0.0.1:8000 [ECOMARINE_TOKEN=...] Rscript predict.R PHOTO
library(httr2)

url <- Sys.getenv("ECOMARINE_URL", "http://127.0.0.1:8000")
token <- Sys.getenv("ECOMARINE_TOKEN")
photo <- commandArgs(trailingOnly = TRUE)[1]

req <- request(url) |>
  req_url_path_append("v1", "predict") |>
  req_body_multipart(file = curl::form_file(photo, type = "image/jpeg")) |>
  req_error(is_error = function(resp) FALSE)
if (nzchar(token)) req <- req_auth_bearer_token(req, token)

resp <- req_perform(req)
body <- resp_body_json(resp)
if (resp_status(resp) >= 400) stop(body$error, ": ", body$detail)

verdict <- if (!is.null(body$rejection_reason)) {
  paste("rejected:", body$rejection_reason)
} else if (isTRUE(body$is_new_individual)) {
  "new individual"
} else {
  body$individual_id
}
cat(body$source, ":", verdict, "\n")
for (cand in body$candidates) cat(" ", cand$individual_id, sprintf("%.3f", cand$score), "\n")
