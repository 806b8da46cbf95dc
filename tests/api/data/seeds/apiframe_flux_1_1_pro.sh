curl -X POST https://api.apiframe.ai/v2/images/generate \
  -H "X-API-Key: afk_your_api_key_here" \
  -H "Content-Type: application/json" \
  -d '{
        "prompt": "a sleek silver sports car on a coastal highway at sunset, hyper-realistic",
        "model": "flux-1.1-pro",
        "fluxParams": {
            "image_prompt": "https://example.com/input.jpg",
            "image_prompt_strength": 0.5,
            "output_format": "jpg",
            "output_quality": 90
        }
    }'
