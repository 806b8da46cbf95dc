"""Wire shapes of executions, free of the web framework.

The API dialects render responses with these, and webhooks render payloads
with the same functions, so a BFL webhook body is exactly a get_result body.
``url_for(file_view) -> str`` turns a stored file into a signed URL.
"""
