curl --request POST \
  --url https://api.bfl.ai/v1/flux-pro \
  --header 'Content-Type: application/json' \
  --header 'x-key: <api-key>' \
  --data '{
  "prompt": "ein fantastisches bild",
  "image_prompt": "<string>",
  "width": 1024,
  "height": 768,
  "steps": 40,
  "prompt_upsampling": false,
  "seed": 42,
  "guidance": 2.5,
  "safety_tolerance": 2,
  "interval": 2,
  "output_format": "jpeg",
  "webhook_url": "<string>",
  "webhook_secret": "<string>"
}'
