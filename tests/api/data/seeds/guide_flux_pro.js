const fetch = require('node-fetch');
async function generateImage(prompt) {
  const response = await fetch('https://api.bfl.ai/v1/flux-pro-1.1', {
    method: 'POST',
    headers: {
      'Authorization': `Bearer ${process.env.BFL_API_KEY}`,
      'Content-Type': 'application/json'
    },
    body: JSON.stringify({
      prompt,
      width: 1024,
      height: 1024,
      steps: 28,
      guidance: 3.5
    })
  });
  const data = await response.json();
  return data.images[0].url;
}
generateImage('Cinematic portrait with dramatic rim lighting')
  .then(url => console.log('Generated:', url))
  .catch(err => console.error(err));
