curl -X POST https://api.bfl.ai/v1/flux-pro-1.1 \
-H "Authorization: Bearer $BFL_API_KEY" \
-H "Content-Type: application/json" \
-d '{
"prompt": "Professional product photo of wireless headphones on marble surface, studio lighting",
"width": 1536,
"height": 1024,
"steps": 28,
"guidance": 3.5
}'
